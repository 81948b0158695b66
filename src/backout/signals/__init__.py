"""Signal adapters for the monitor: each turns one external source into numbers.

HTTP probes (with consecutive-failure counting), the Docker Engine (state,
healthcheck failing streak, restarts, memory and CPU), container logs (error
lines per window), a Prometheus server (PromQL instant queries) and a custom
command. None decides anything; the policy does (backout.policy.rules).
"""
