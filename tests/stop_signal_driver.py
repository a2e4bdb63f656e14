"""Runs main.py as one rank the way run_with_submitit.py does (SIGUSR2 -> utils.request_stop), and on rank 1 only
sends that signal to itself at one point of the run, so that the tests see the ranks agree on a stop there.

    python tests/stop_signal_driver.py POINT MAIN_ARGS...

POINT: start (before main.py starts: the launcher's early signal), evaluation (inside the first evaluation),
epoch_checkpoint (while the first end-of-epoch checkpoint is written), none. Exits 3 after a stop
(utils.TrainingInterrupted), 0 when training finished.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import checkpoint  # noqa: E402
import main  # noqa: E402
import utils  # noqa: E402


def signal_once(function, when=lambda *args, **kwargs: True):
    """`function`, sending this process SIGUSR2 after it first returns from a call that `when` accepts."""
    sent = []

    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        if not sent and when(*args, **kwargs):
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR2)
        return result
    return wrapper


def main_with_signal(point, argv):
    signal.signal(signal.SIGUSR2, utils.request_stop)
    if os.environ.get('RANK') == '1':
        if point == 'start':
            os.kill(os.getpid(), signal.SIGUSR2)
        elif point == 'evaluation':
            main.evaluate_and_keep_best = signal_once(main.evaluate_and_keep_best)
        elif point == 'epoch_checkpoint':
            save_periodic = checkpoint.Checkpointer.save_periodic
            checkpoint.Checkpointer.save_periodic = signal_once(
                save_periodic, when=lambda self, epoch, step=None: step is None)  # not a step checkpoint
    try:
        main.main(main.parse_args(argv))
    except utils.TrainingInterrupted:
        sys.exit(3)
    finally:
        if utils.is_dist_avail_and_initialized():
            utils.dist.destroy_process_group()


if __name__ == '__main__':
    main_with_signal(sys.argv[1], sys.argv[2:])
