// Package srtpsealtest holds test helpers for SRTP: master keys and salts
// of a profile's lengths made from a formula, so that tests use keys of
// their own.
package srtpsealtest

import "github.com/pion/srtp/v3"

// Keys returns a master key and salt of profile's lengths whose byte i is
// keyMul*i+keyAdd and saltMul*i+saltAdd.
func Keys(profile srtp.ProtectionProfile, keyMul, keyAdd, saltMul, saltAdd int) (key, salt []byte) {
	keyLen, _ := profile.KeyLen()
	saltLen, _ := profile.SaltLen()
	key, salt = make([]byte, keyLen), make([]byte, saltLen)
	for i := range key {
		key[i] = byte(keyMul*i + keyAdd)
	}
	for i := range salt {
		salt[i] = byte(saltMul*i + saltAdd)
	}
	return key, salt
}
