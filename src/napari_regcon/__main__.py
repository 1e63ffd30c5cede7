"""Allow ``python -m napari_regcon`` (used by torchrun)."""

from napari_regcon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
