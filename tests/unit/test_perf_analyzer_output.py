"""perf_analyzer's server-side section (from the server's ModelStatistics) read from its output,
as tritonclient 2.48's perf_analyzer printed it against tideserve."""

from __future__ import annotations

from harness.perf_analyzer import parse_server_section

OUTPUT = """\
Request concurrency: 4
  Client: 
    Request count: 565
    Throughput: 77.2746 infer/sec
    Avg latency: 51696 usec (standard deviation 53523 usec)
  Server: 
    Inference count: 565
    Execution count: 411
    Successful request count: 565
    Avg request latency: 43489 usec (overhead 14520 usec + queue 25430 usec + compute input 114 usec + compute infer 3308 usec + compute output 116 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 4, throughput: 77.2746 infer/sec, latency 51696 usec
"""  # noqa: E501, W291


def test_the_server_section_is_read_with_its_counts_and_latency_parts() -> None:
    assert parse_server_section(OUTPUT) == {
        "inference_count": 565,
        "execution_count": 411,
        "successful_request_count": 565,
        "avg_request_latency_us": 43489,
        "overhead_us": 14520,
        "queue_us": 25430,
        "compute_input_us": 114,
        "compute_infer_us": 3308,
        "compute_output_us": 116,
    }


def test_output_without_a_server_section_reads_empty() -> None:
    assert parse_server_section(OUTPUT.split("  Server:")[0]) == {}
