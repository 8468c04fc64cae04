"""The run report: figures (charts.py), the picture grid's predictions (samples.py), HTML (html.py)."""
