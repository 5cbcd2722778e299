"""Joint compression: Deep Compression, combined methods, sensitivity and automatic compression."""
