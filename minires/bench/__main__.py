"""``python -m minires.bench --worker SPEC``: the child process of one measurement (see ``worker``)."""
from .worker import main

main()
