"""Few-step image, video and toy generators on the shared flow core (DESIGN.md section 6)."""
