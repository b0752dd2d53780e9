"""`postal bench faults`: the fault matrix under load, the promise that cache trouble never fails
a request, measured on demand.

For each of twelve faults (Redis refusing, black-holed, slow, restarted; a replica killed; a pool
of one; DNS failing; DNS moved; a TLS certificate that does not verify; the database down; the
near cache's tracking connections killed; one Postal cut off from Redis while another writes), a
Postal server process on real Redis servers of the run's own takes 100 concurrent readers and one
writer over HTTP (for the near cache's faults, the writer writes through a second Postal), and
the run counts failed, stale and wrong reads, times p99 per phase and the recovery, and checks
from Postal's /metrics that the fault really happened.

- `rig`: the servers, proxies, DNS script and Postal child of one fault;
- `load`: readers, writer, the checks of every reply, the /metrics scraper;
- `fault`: what a fault is (its shape, the metrics it reads as evidence);
- `scenarios`: the faults and their evidence (`near_faults`: the near cache's two);
- `certs`: the untrusted certificates of the TLS fault, made with `openssl`;
- `report`: the rows, their targets, the table and the JSON;
- `runner`: the phases, one fault after another;
- `command`: `postal bench faults` itself.

The command (`postal bench faults`) and the tests (tests/faults/test_matrix.py) run the same code.
"""

from postal_bench.faults.fault import Fault
from postal_bench.faults.report import FaultReport, FaultResult, render_report
from postal_bench.faults.runner import FaultOptions, run_faults
from postal_bench.faults.scenarios import FAULT_NAMES, FAULTS, faults_named

__all__ = [
    "FAULTS",
    "FAULT_NAMES",
    "Fault",
    "FaultOptions",
    "FaultReport",
    "FaultResult",
    "faults_named",
    "render_report",
    "run_faults",
]
