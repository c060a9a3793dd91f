"""Command modules: the functions behind ``python -m lit_llm prepare | size | plan | crossval | sweep | submit``.

Each is a typed function whose signature and docstring are its command line (``lit_llm.cli`` lists them in
``COMMANDS`` and imports one only when it runs). A function with a ``fit_args`` parameter receives fit's
arguments (``--config FILE`` ..., overrides) and resolves them with ``lit_llm.lightning_cli.resolve_config``. Library
code does not import from here.
"""
