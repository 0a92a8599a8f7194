"""HTML pages for people; they call the same rooms as the API."""
