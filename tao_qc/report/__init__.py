"""What a compile leaves to read: report.html, its pictures, and the terminal rendering of results."""
