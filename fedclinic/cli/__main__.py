"""`python -m fedclinic.cli ...`, as the deployment harness starts the command."""

import sys

from fedclinic.cli import main

sys.exit(main())
