module github.com/hershy/hershy/examples

go 1.22
