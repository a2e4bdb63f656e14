"""Input adapters and data reading for the modalities beyond images (UniRepLKNet, Sec. 3.4 and 5).

One module per modality: `audio`, `video`, `point_cloud`, `time_series`. Each reads its data set's own layout and
turns it into what the shared `UniRepLKNet` backbone takes, so every modality trains through the same `main.py`,
engine, checkpoints and launcher as images.
"""

import importlib

# --data_set name -> the module of this package that reads it and adapts the backbone to it.
ADAPTER_MODULES = {
    'GLOBAL_TEMP': 'time_series',
    'GLOBAL_WIND': 'time_series',
    'MODELNET40': 'point_cloud',
    'SPEECHCOMMANDS': 'audio',
    'KINETICS400': 'video',
    'audio_folder': 'audio_folder',
    'point_folder': 'point_folder',
}


def adapter_module(data_set):
    """The modality module for `data_set`, or None for image data sets.

    A modality module may define `backbone_kwargs(args) -> dict` (constructor kwargs of the backbone, e.g. in_chans,
    applied before --model_overrides) and `build_model(args, backbone) -> nn.Module` (the model main.py trains, around
    the backbone built from --model). main.build_model calls both when they exist.
    """
    name = ADAPTER_MODULES.get(data_set)
    return None if name is None else importlib.import_module(f'{__name__}.{name}')
