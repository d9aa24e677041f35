"""``python -m workbench.experiments strip NOTEBOOK...``."""
from workbench.experiments.notebook import main

if __name__ == "__main__":
    raise SystemExit(main())
