import os

import torch

# Tests are small; one intra-op thread keeps them deterministic and leaves a core for the rest.
torch.set_num_threads(int(os.environ.get("ICLAB_TEST_THREADS", "1")))
