"""Pure tensor functions (no module state): linear recurrences, convolutions, signatures."""
