"""The engine: backends, the Layer contract, Sequential, loss, optimizer, gradient checks."""
