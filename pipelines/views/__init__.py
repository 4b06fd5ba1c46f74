"""SQL-on-FHIR v2 ViewDefinitions compiled to set-based DuckDB SQL, run as a suite or materialized."""

from .compiler import CompiledView, ViewDefinitionError, compile_view, default_table
from .materialize import compile_views, materialize_views
from .suite import SuiteResult, run_suite

__all__ = [
    "CompiledView",
    "SuiteResult",
    "ViewDefinitionError",
    "compile_view",
    "compile_views",
    "default_table",
    "materialize_views",
    "run_suite",
]
