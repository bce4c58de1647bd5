"""Generated from proto/hershy/v1 by scripts/codegen.sh. Do not edit."""
