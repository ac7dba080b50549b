"""Theory of Markov-chain prompts (Ding et al. 2025): the Bayes predictor, the convex optimum of one
LSA layer and its (non-)realizability, and the exact multi-layer recursion.
"""

from iclab.theory.markov_chain.bayes import (
    MarkovBayes,
    markov_bayes,
    markov_posterior_predictive,
    transition_counts,
)
from iclab.theory.markov_chain.multilayer import (
    LayerReading,
    cubic_objective,
    label_row_reading,
    square_loss,
)
from iclab.theory.markov_chain.one_layer import (
    MonteCarloOptimum,
    OneLayerOptimum,
    column_matrices,
    gram_features,
    one_layer_features,
    one_layer_optimum_d1,
    one_layer_optimum_exact,
    optimum_monte_carlo,
    phi,
)
from iclab.theory.markov_chain.realizability import (
    Certificate,
    GlobalBounds,
    Recovery,
    global_gap_bounds,
    non_realizability_certificate,
    realizable_d1,
    realize_d1,
    recover_parameters,
)

__all__ = [
    "Certificate",
    "GlobalBounds",
    "LayerReading",
    "MarkovBayes",
    "MonteCarloOptimum",
    "OneLayerOptimum",
    "Recovery",
    "column_matrices",
    "cubic_objective",
    "global_gap_bounds",
    "gram_features",
    "label_row_reading",
    "markov_bayes",
    "markov_posterior_predictive",
    "non_realizability_certificate",
    "one_layer_features",
    "one_layer_optimum_d1",
    "one_layer_optimum_exact",
    "optimum_monte_carlo",
    "phi",
    "realizable_d1",
    "realize_d1",
    "recover_parameters",
    "square_loss",
    "transition_counts",
]
