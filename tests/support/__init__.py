"""What several test modules share: real servers, request bodies, metric reads and the
gallery chaos run. Fixtures stay in the conftest files; these are plain helpers."""
