"""Input adapters and data reading for the modalities beyond images (UniRepLKNet, Sec. 3.4 and 5).

One module per modality: `audio`, `video`, `point_cloud`, `time_series`. Each reads its data set's own layout and
turns it into what the shared `UniRepLKNet` backbone takes, so every modality trains through the same `main.py`,
engine, checkpoints and launcher as images.
"""
