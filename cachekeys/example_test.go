package cachekeys_test

import (
	"fmt"
	"strings"

	"github.com/cachedrepo/cachedrepo/cachekeys"
)

func ExampleBuilder_Key() {
	b, err := cachekeys.New("shop", "products", "v1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(b.Key("42"))
	fmt.Println(b.Key("tenant-1", "a:b c"))
	fmt.Println(b.Key("a", ""))
	fmt.Println(b.WithGeneration(3).Key("42"))
	fmt.Println(b.Key(strings.Repeat("x", 300)))

	id, _ := cachekeys.Part(int64(42))
	fmt.Println(b.Key(id) == b.IntKey(42))
	// Output:
	// shop:products:v1:0:42
	// shop:products:v1:0:tenant-1:a%3Ab%20c
	// shop:products:v1:0:a:%
	// shop:products:v1:3:42
	// shop:products:v1:0:#k1e2uWr_F9RNWOWQhPaeHdrN9exhF9WE9M-qkvwT2rY
	// true
}
