"""Input adapters and data reading for the modalities beyond images (UniRepLKNet, Sec. 3.4 and 5).

One module per modality: `audio`, `video`, `point_cloud`, `time_series`. Each reads its data set's own layout and
turns it into what the shared `UniRepLKNet` backbone takes, so every modality trains through the same `main.py`,
engine, checkpoints and launcher as images. Each declares its data sets' specs (`SPECS`, see specs.py: options,
recipe defaults, dataset builder, model around the backbone, task, capabilities) and its options
(`add_arguments(parser)`). A module imports its extra's packages (lhotse, soundfile, av, h5py, pandas) only where it
reads data, so main.py can list every option and name a missing extra without them.
"""
