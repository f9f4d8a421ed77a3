"""Settings plugins: configured like the reference's producers and profile handlers, with
no role in a profile of their own."""
