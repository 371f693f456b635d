"""Recurrent cores: one module each, all meeting the core contract of ARCHITECTURE.md.

forward(x: (B, L, H), state=None, mode="scan", lengths=None) -> (y: (B, L, H), final_state);
step(x_t: (B, H), state) -> (y_t, state); default_state(batch) -> state.
"""
