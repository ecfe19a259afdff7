"""The bodies of the subcommands that read a finished run or a model, not a job's config:
``export`` (ONNX / TorchScript / safetensors), ``generate`` (text from a language model) and
the soft-target demonstrations (``softmax``, ``dark-knowledge``; the soft_targets analysis
draws with the same code). ``kdrun.cli.commands`` parses their arguments and lists them."""
