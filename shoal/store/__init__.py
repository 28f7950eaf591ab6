"""The store: versioned objects, transactions, and watches from a revision. The only shared state."""
