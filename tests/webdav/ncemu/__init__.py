"""A Nextcloud-compatible WebDAV server for tests (see ../README.md).

Modules, one job each:
  errors.py   the Sabre/Nextcloud exceptions, their status codes and XML bodies
  names.py    Nextcloud's file name rules (FilenameValidator, View::verifyPath)
  store.py    the data tree on disk plus the metadata Nextcloud keeps in its
              file cache (fileid, etag, mtime, checksum, dead properties)
  davxml.py   request parsing and multistatus writing (PROPFIND, PROPPATCH)
  control.py  the /__test/ state: request counters, locks, quota, freeze, faults
  handler.py  the HTTP methods, in the order Sabre runs its plugins
"""
