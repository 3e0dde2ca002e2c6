"""``python -m fastmbconv``: print the B0-B7 table of resolution, params and FLOPs."""
from .flops import format_table, model_table

if __name__ == "__main__":
    print(format_table(model_table()))
