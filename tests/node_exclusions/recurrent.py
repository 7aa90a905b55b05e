"""Node tests of LSTM, GRU and RNN that flexnn refuses on purpose: none. All 18 cases (every
direction, layout 1, initial bias and states, sequence_lens, peepholes) run and match."""

EXCLUDED: dict[str, str] = {}
