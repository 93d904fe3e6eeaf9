"""The built-in shapes world, where the default job, the tests and the demo run on a CPU.

model.py      a tiny SD3 (every StableDiffusion3Pipeline component, random or pretrained)
shapes.py     scenes of coloured shapes: captions, layouts, renderer
prompts.py    GenEval-like prompt categories, difficulty tags, the fixed train/test split
parser.py     caption -> constraints;  detect.py: image -> shapes found
reward.py     the "shapes" reward (GenEval-style partial credit + strict accuracy)
pretrain.py   trains the world model;  evaluate.py: accuracy of a pipeline
"""
