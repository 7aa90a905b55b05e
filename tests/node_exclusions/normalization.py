"""Node tests of the normalization family (LayerNormalization, InstanceNormalization,
GroupNormalization, MeanVarianceNormalization, LpNormalization) that flexnn refuses on purpose.

Every case of these five ops runs (all 30 as of onnx 1.23), LayerNormalization's Mean and
InvStdDev outputs included."""

EXCLUDED: dict[str, str] = {}
