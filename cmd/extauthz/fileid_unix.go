//go:build unix

package main

import (
	"io/fs"
	"syscall"
)

// fileIDOf is the device and inode of the file fi describes: which file a
// path names, whatever its size and time.
func fileIDOf(fi fs.FileInfo) fileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	}
	return fileID{}
}
