"""The demo: a small shape detector the project trains itself, and the inputs `make demo` runs it on."""
