//! Network shell.
