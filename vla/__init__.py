"""vla-stack policies: tokenizers, discrete-diffusion model, decoding, training, capability vectors, Policy API."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import vla` must not pull torch for the CLI's fast paths
    if name == "Policy":
        from vla.policy import Policy

        return Policy
    raise AttributeError(name)
