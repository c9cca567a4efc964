"""A few English sentences for the MiniLM tests: short enough to run the real encoder in a second."""

SENTENCES = [
    "The function returns a new list in sorted order.",
    "A socket is closed when the object is deleted.",
    "Every module has its own private symbol table.",
    "The value is converted to a string before it is printed.",
]
