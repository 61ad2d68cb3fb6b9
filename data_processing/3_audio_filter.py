"""Step 3: keep clips whose voice matches the mouth, within head-pose and motion limits. See megactor/curation/pipeline.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from megactor.curation.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["audio"]))
