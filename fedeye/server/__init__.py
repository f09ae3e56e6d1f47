"""The coordinator: ServerApp, run store, recorder, deployment orchestration, dashboard."""
