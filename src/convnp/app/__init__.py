"""The application: command line, built-in recipes, architecture strings, plots."""
