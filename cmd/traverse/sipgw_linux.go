package main

import (
	"github.com/traverse-rtc/traverse/internal/mediaproxy/nftoffload"
)

func newNftOffloader() (*nftoffload.Offloader, error) { return nftoffload.New(nftoffload.Config{}) }
