"""Scripts run from the repository root; a package so the tests can import the bad-input sweep."""
