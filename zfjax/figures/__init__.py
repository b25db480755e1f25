"""Figure functions, one module per analysis: core results (and display images) in, a
matplotlib Figure out. They import ``render`` and the cores' NamedTuples, never argparse
or the commands."""
