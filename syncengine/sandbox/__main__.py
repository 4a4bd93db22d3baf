"""``python -m syncengine.sandbox``: the same as ``syncengine sandbox``."""

from syncengine.sandbox.cli import sandbox_command

__all__: list[str] = []

if __name__ == "__main__":
    sandbox_command()
