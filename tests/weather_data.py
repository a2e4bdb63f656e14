"""Real hourly weather of three stations, from the files the pvlib wheel ships, in Corrformer's .npy layout.

pvlib/data/: 703165TY.csv (Sand Point, AK) and 723170TYA.CSV (Greensboro, NC) are TMY3 files (degrees C, m/s);
12839.tm2 (Miami, FL) is a TMY2 file, whose values are already in tenths (Corrformer's x10 units). Each is a typical
year of 8,760 hours; the three are aligned hour by hour on the first file's calendar (year 2001, local time).
"""
import os
import sys

import numpy as np
import pvlib

PVLIB_DATA = os.path.join(os.path.dirname(pvlib.__file__), 'data')
UNITS_PER_PHYSICAL = 10.0  # Corrformer stores x10 values
# Three months of training, two weeks each of validation and test (the year runs January to December).
QUICKSTART_SPLIT_HOURS = {'train': (0, 2160), 'val': (2160, 2496), 'test': (2496, 2832)}


def read_stations():
    """(temperatures (8760, 3), wind speeds (8760, 3)) in tenths, timestamps (8760,), stations (3, 3)."""
    tmy3 = [pvlib.iotools.read_tmy3(os.path.join(PVLIB_DATA, name), coerce_year=2001, map_variables=True)
            for name in ('703165TY.csv', '723170TYA.CSV')]
    tmy2, tmy2_meta = pvlib.iotools.read_tmy2(os.path.join(PVLIB_DATA, '12839.tm2'))
    temperature = np.stack([data['temp_air'].to_numpy() * UNITS_PER_PHYSICAL for data, _ in tmy3]
                           + [tmy2['DryBulb'].to_numpy()], axis=1)
    wind = np.stack([data['wind_speed'].to_numpy() * UNITS_PER_PHYSICAL for data, _ in tmy3]
                    + [tmy2['Wspd'].to_numpy()], axis=1)
    metadata = [meta for _, meta in tmy3] + [tmy2_meta]
    stations = np.array([[meta['latitude'], meta['longitude'], meta['altitude']] for meta in metadata])
    times = np.array(tmy3[0][0].index.tz_localize(None).to_pydatetime(), dtype=object)
    return temperature.astype(np.float32), wind.astype(np.float32), times, stations.astype(np.float32)


def write_corrformer_layout(folder, prefix, series, times, stations, split_hours):
    """FOLDER/{prefix}_global_hourly_{split}.npy (T, S, 1), data_time_{split}.npy, stations_sorted.npy.

    split_hours: {'train': (first, end), 'val': ..., 'test': ...} hour ranges of `series`."""
    os.makedirs(folder, exist_ok=True)
    for split, (first, end) in split_hours.items():
        np.save(os.path.join(folder, f'{prefix}_global_hourly_{split}.npy'), series[first:end, :, None])
        np.save(os.path.join(folder, f'data_time_{split}.npy'), times[first:end], allow_pickle=True)
    np.save(os.path.join(folder, 'stations_sorted.npy'), stations)
    return folder


def write_quickstart_folder(folder):
    """Temperature and wind of the three stations in one folder (configs/time_series/quickstart_*.yaml)."""
    temperature, wind, times, stations = read_stations()
    write_corrformer_layout(folder, 'temp', temperature, times, stations, QUICKSTART_SPLIT_HOURS)
    return write_corrformer_layout(folder, 'wind', wind, times, stations, QUICKSTART_SPLIT_HOURS)


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python tests/weather_data.py OUTPUT_FOLDER')
    print(f'wrote {write_quickstart_folder(sys.argv[1])}')
