"""A stage whose compute fails while being built: the supervisor must stop restarting it."""


def make_stage(ctx):
    raise RuntimeError("this stage crashes on purpose")
