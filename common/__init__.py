"""Primitives below every ukd package: atomic files, hashing, schedules, field constraints and
the MLflow names shared by the orchestrator and the reports. Plain Python: importing this
package pulls in neither torch nor pydantic."""
