"""Search mechanisms for the inner loop, the search space, and the sandbox that runs generated ones."""
