"""The superflow_lite app: python app.py [--runs runs] [--host 127.0.0.1] [--port 7860]

Launch runs, watch them, compare the base model with a run's LoRA. The logic lives in
superflow_lite/ui/; this file only starts it. Runs are `python -m superflow_lite.train`
subprocesses that keep going if the browser tab (or this app) closes.
"""
from superflow_lite.ui.app import main

if __name__ == "__main__":
    main()
