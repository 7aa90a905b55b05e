"""Node tests of the first op families (conv, gemm, pooling, elementwise, shape ops) that flexnn
refuses on purpose, each with the reason."""

_INT = "flexnn runs float32 models; integer tensors are refused at import"
EXCLUDED = {
    "test_reshape_allowzero_reordered": "zero-size tensors are refused at import",
    "test_clip_default_int8_inbounds": _INT,
    "test_clip_default_int8_max": _INT,
    "test_clip_default_int8_min": _INT,
    "test_maxpool_2d_uint8": _INT,
    "test_maxpool_with_argmax_2d_precomputed_pads": "MaxPool's Indices output is not supported (one output per op)",
    "test_maxpool_with_argmax_2d_precomputed_strides": "MaxPool's Indices output is not supported (one output per op)",
    "test_batchnorm_epsilon_training_mode": "inference only: training-mode BatchNormalization is refused",
    "test_batchnorm_example_training_mode": "inference only: training-mode BatchNormalization is refused",
    "test_dropout_default_mask": "Dropout's mask output is not supported (one output per op)",
    "test_dropout_default_mask_ratio": "Dropout's mask output is not supported (one output per op)",
    "test_training_dropout": "inference only: training-mode Dropout is refused",
    "test_training_dropout_default": "inference only: training-mode Dropout is refused",
    "test_training_dropout_default_mask": "inference only: training-mode Dropout is refused",
    "test_training_dropout_mask": "inference only: training-mode Dropout is refused",
    "test_training_dropout_zero_ratio": "inference only: training-mode Dropout is refused",
    "test_training_dropout_zero_ratio_mask": "inference only: training-mode Dropout is refused",
    "test_identity_sequence": "sequence types are not tensors",
    "test_identity_opt": "optional types are not tensors",
}
